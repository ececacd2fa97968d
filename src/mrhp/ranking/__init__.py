"""Ranking new reviews: the request format and its one parser, the Ranker, `mrhp predict` and the service."""

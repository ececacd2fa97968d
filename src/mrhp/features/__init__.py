"""Features computed from raw inputs: image regions from image files (images, image_folder), images fetched from
URLs (fetch_images), and the states of pretrained text encoders (text_encoder)."""

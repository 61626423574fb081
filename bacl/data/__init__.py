"""Feature stores, datasets and candidate pools."""

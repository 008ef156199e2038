"""The model store: names, blobs, manifests, the catalog and the sources that fill it."""

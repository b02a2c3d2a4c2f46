"""Small bundled data sets, loaded from installed packages or generated; never downloaded."""

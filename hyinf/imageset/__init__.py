"""Explaining sets of images: folders, globs and lists of files, in this process or on a Ray cluster,
each image's results in its own folder with one index of them all."""

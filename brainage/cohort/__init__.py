"""The group level's input: the participants table aligned with each modality's inputs.

Import the submodules directly; this package file imports nothing.
"""

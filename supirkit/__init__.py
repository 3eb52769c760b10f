"""supirkit: the command line over datapipe, curation, captioning, degrade and train."""
__version__ = "0.1.0"

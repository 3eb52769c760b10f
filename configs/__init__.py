"""The shipped job configs (YAML, one folder per stage), installed as package data of ``supirkit.configs``.

Commands look names up here (``--config curate/full.yaml``, ``--accelerate-config ddp_8gpu``) from any
working folder; ``SUPIRKIT_CONFIGS`` points the lookup at another folder.
"""

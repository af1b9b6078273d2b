"""mixerlab's core: the backbone the mixers plug into, the training recipe, and run bookkeeping."""

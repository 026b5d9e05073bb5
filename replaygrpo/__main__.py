"""`python -m replaygrpo ...` (and `torchrun ... -m replaygrpo train ...`)."""
from replaygrpo.cli import main

main()

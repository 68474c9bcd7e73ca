"""Where results are saved: `NNNNN-SEED.png` (AUTOMATIC1111's naming; `NNNNN.png` without a seed),
NNNNN after the highest number in the folder. The name is created exclusively, so two writers (the
app's jobs, the CLI, another process) never overwrite each other or a user's file."""
import os
import re
from pathlib import Path

NUMBERED = re.compile(r"^(\d{5,})(?:-|\.)")


def reserve_output(folder, seed=None, suffix: str = ".png") -> Path:
    """A new, empty file folder/NNNNN[-SEED].png, created exclusively; the caller writes into it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for m in map(NUMBERED.match, os.listdir(folder)) if m]
    index = max(numbers, default=-1) + 1
    tail = f"-{seed}" if seed is not None else ""
    while True:
        path = folder / f"{index:05d}{tail}{suffix}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return path
        except FileExistsError:
            index += 1

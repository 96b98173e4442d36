"""One module per architecture. Importing the package registers the custom layers that a
saved `.keras` checkpoint needs: `import models` before `keras.saving.load_model(...)`."""

from models import layers, preprocessing  # noqa: F401

"""An image row's image, resized as qwen-vl-utils resizes it for the model (`fetch_image`: between the settings'
`image_min_pixels` and `image_max_pixels`, its sides in the model's pixel unit).

Example:
```python
>>> image = load_image("sign.png", VideoSettings(video_patch_size=14))  # doctest: +SKIP
>>> image.size  # doctest: +SKIP
(56, 56)
```
"""

from dataclasses import dataclass

from rewatch_trl.prompts import VideoSettings
from rewatch_trl.video import VideoError


class ImageError(VideoError):
    """An image that cannot be read: the message names the file."""


@dataclass
class LoadedImage:
    """An image as the model sees it: its file and the resized RGB picture."""

    path: str
    image: object  # PIL.Image.Image

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in px."""
        return self.image.size


def load_image(path: str, settings: VideoSettings) -> LoadedImage:
    """The image at `path` resized for the model (`settings.video_patch_size`: its patch, 14 px if unset); an error
    naming the file if it is not there or not an image."""
    from PIL import UnidentifiedImageError
    from qwen_vl_utils import fetch_image

    block = settings.image_block(str(path))
    try:
        image = fetch_image(block, image_patch_size=settings.video_patch_size or 14)
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageError(f"cannot read image {path}: {error}") from None
    return LoadedImage(str(path), image)

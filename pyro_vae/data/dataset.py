"""A data set: a matrix of datapoints, optional labels, and what is known about them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyro_vae._checks import check_matrix


@dataclass(frozen=True)
class Dataset:
    """Rows of ``x`` are datapoints; ``y`` holds integer labels (or ``None``).

    :ivar image_shape: ``(height, width)`` when rows are flattened images (for plots).
    :ivar num_classes: number of label values (0 without labels).
    """

    x: torch.Tensor
    y: torch.Tensor | None = None
    name: str = "data"
    image_shape: tuple[int, int] | None = None
    num_classes: int = 0

    def __post_init__(self) -> None:
        check_matrix(self.x, name=self.name)
        if self.y is not None and self.y.shape[0] != self.x.shape[0]:
            raise ValueError(f"{self.name}: {self.x.shape[0]} rows but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_features(self) -> int:
        return self.x.shape[1]

    def tensors(self, *, with_labels: bool = True) -> tuple[torch.Tensor, ...]:
        """``(x,)`` or ``(x, y)``: the form :func:`~pyro_vae.train.fit` takes."""
        return (self.x, self.y) if with_labels and self.y is not None else (self.x,)

    def subset(self, index: torch.Tensor, *, name: str | None = None) -> Dataset:
        return Dataset(
            x=self.x[index],
            y=None if self.y is None else self.y[index],
            name=name or self.name,
            image_shape=self.image_shape,
            num_classes=self.num_classes,
        )

    def to(self, *args: object, **kwargs: object) -> Dataset:
        """Move ``x`` (dtype and/or device, as ``Tensor.to``) and ``y`` (device only)."""
        x = self.x.to(*args, **kwargs)
        y = None if self.y is None else self.y.to(x.device)
        return Dataset(x=x, y=y, name=self.name, image_shape=self.image_shape, num_classes=self.num_classes)

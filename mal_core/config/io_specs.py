"""What an action reads and writes, and where a data-source key's value comes from (plain pydantic models,
importable without torch; rendered into ``references/skill_info.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DataSourceName = Literal["train_datasets", "eval_dataset", "inference_dataset"]
DataFile = Literal["images.tar.gz", "annotations.json"]


class FrozenModel(BaseModel):
    """Base of the skill_info models: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(FrozenModel):
    """A spec key that points at something the action reads."""

    type: Literal["file", "folder", "path"] = Field(description="path = a file or a folder")
    optional: bool = False
    description: str = ""


class OutputSpec(FrozenModel):
    """A spec key that points at something the action writes."""

    type: Literal["file", "folder"]
    description: str = ""
    files: list[str] = Field(default_factory=list, description="file names (patterns) written inside the folder")


class DataSource(FrozenModel):
    """Where the value of a data-source spec key comes from."""

    source: DataSourceName
    path: DataFile
    runtime: Literal["extracted_folder", "file"]
    list: bool = False
    optional: bool = False


def images(source: DataSourceName, optional: bool = False) -> DataSource:
    """An image folder delivered as ``images.tar.gz`` of ``source``."""
    return DataSource(source=source, path="images.tar.gz", runtime="extracted_folder", optional=optional)


def annotations(source: DataSourceName, optional: bool = False) -> DataSource:
    """A COCO JSON delivered as ``annotations.json`` of ``source``."""
    return DataSource(source=source, path="annotations.json", runtime="file", optional=optional)

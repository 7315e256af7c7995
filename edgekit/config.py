"""Base types of every recipe section: strict models (an unknown key is an error) and paths with variables."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from edgekit.assets import expand

PathText = Annotated[str, AfterValidator(expand)]  # a path; ${EDGEKIT_ASSETS} and other variables expanded
CREATED = "edgekit:created"  # marks a path the run writes (``Annotated[PathText, CREATED]``): preflight does not require it to exist
CreatedPathText = Annotated[PathText, CREATED]


class Strict(BaseModel):
    """A recipe section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

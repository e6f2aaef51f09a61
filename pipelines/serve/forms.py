"""The request fields of the two generation routes (pydantic, for validation and the OpenAPI page) and the HTTP
error every deployment answers with: a status and a one-line reason, never a server path."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vssflow.constants import DEFAULT_TASK


class GenerateForm(BaseModel):
    """Fields of ``POST /v1/generate`` (multipart/form-data). Files: ``video`` (required), ``reference_voice``."""

    model_config = ConfigDict(extra="forbid")
    task: Literal["v2s", "tts", "joint"] | None = Field(None, description=f"default: {DEFAULT_TASK}")
    transcript: str | None = Field(None, max_length=2000, description="what is said (tts, joint)")
    speech_span: str | None = Field(
        None, max_length=64, description="START,END seconds where the words are (tts, joint); default: the mouth's"
    )
    steps: int | None = Field(None, ge=1, description="solver steps (default: the model's)")
    cfg: float | None = Field(None, ge=0.0, description="classifier-free guidance scale")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="random seed; drawn when absent, echoed in X-Seed")
    output: Literal["wav", "mp4"] = "wav"


class FeaturesForm(BaseModel):
    """Fields of ``POST /v1/generate/features``. File: ``features`` (.npz or one-row .parquet)."""

    model_config = ConfigDict(extra="forbid")
    steps: int | None = Field(None, ge=1)
    cfg: float | None = Field(None, ge=0.0)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)


def multipart_schema(form: type[BaseModel], files: dict[str, bool]) -> dict:
    schema = form.model_json_schema()
    props = dict(schema.get("properties", {}))
    for name, required in files.items():
        props[name] = {"type": "string", "format": "binary", **({} if required else {"nullable": True})}
    body = {"type": "object", "properties": props, "required": [n for n, r in files.items() if r]}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": body}}}}


class HTTPError(Exception):
    """An answer with a status and a one-line reason (raised inside handlers, turned into JSON)."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers or {}


def one_line(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts).replace("\n", " ")


def clean_paths(message: str, paths: dict[str, str]) -> str:
    """An error message without server paths (each replaced by the client's name for the file)."""
    for path, name in paths.items():
        message = message.replace(path, name)
    return message.splitlines()[0] if message else message

"""Request and response models of the Azure Face API v1.0 subset (``/face/v1.0``), with Azure's field names.

Field names are Azure's camelCase JSON keys, so the models read and write exactly what the Azure SDKs send and
expect.  Optional fields left empty are omitted from the answers (:func:`out`), as Azure does.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, RootModel

from .schemas import _In, _Out

GROUP_ID_PATTERN = r"^[a-z0-9_-]{1,64}$"
GROUP_ID_DOC = "the person group id (a gallery of this service): lower-case letters, digits, `-` and `_`"
MAX_IDENTIFY_FACES = 10
MAX_CANDIDATES = 100


# --- paths and queries -------------------------------------------------------------------------------------
class GroupPath(_In):
    personGroupId: str = Field(pattern=GROUP_ID_PATTERN, description=GROUP_ID_DOC)


class PersonPath(GroupPath):
    personId: str = Field(min_length=1, max_length=128, description="the person's id (`personId` of create)")


class ListQuery(_In):
    start: str | None = Field(None, max_length=128, description="list the ids after this one")
    top: int = Field(1000, ge=1, le=1000, description="at most this many")
    returnRecognitionModel: bool = Field(False, description="include `recognitionModel` (person groups)")


class GroupQuery(_In):
    returnRecognitionModel: bool = Field(False, description="include `recognitionModel`")


class DetectQuery(_In):
    returnFaceId: bool = Field(True, description="return a `faceId` per face, usable for 24 h by identify/verify")
    returnFaceLandmarks: bool = Field(False, description="return the landmarks this service finds (5 of Azure's 27)")
    returnFaceAttributes: str | None = Field(
        None, max_length=200, description="comma-separated: `age`, `gender`, `emotion`, `headPose`"
    )
    recognitionModel: str | None = Field(None, max_length=64, description="accepted and ignored: one model serves")
    returnRecognitionModel: bool = Field(False, description="include this service's embedding model id")
    detectionModel: str | None = Field(None, max_length=64, description="accepted and ignored: one detector serves")
    faceIdTimeToLive: int = Field(86400, ge=60, le=86400, description="seconds the `faceId` is kept")


class AddFaceQuery(_In):
    userData: str | None = Field(None, max_length=1024, description="accepted and not kept")
    targetFace: str | None = Field(None, max_length=100, description="not supported: the largest face is enrolled")
    detectionModel: str | None = Field(None, max_length=64, description="accepted and ignored")


# --- JSON bodies ------------------------------------------------------------------------------------------
class CreateGroupBody(_In):
    name: str = Field(min_length=1, max_length=128, description="display name (not kept: see docs/azure.md)")
    userData: str | None = Field(None, max_length=16384, description="not kept")
    recognitionModel: str | None = Field(None, max_length=64, description="accepted and ignored")


class CreatePersonBody(_In):
    name: str = Field(min_length=1, max_length=128, description="display name (need not be unique)")
    userData: str | None = Field(None, max_length=16384, description="kept with the person")


class IdentifyBody(_In):
    faceIds: list[str] = Field(min_length=1, max_length=MAX_IDENTIFY_FACES, description="`faceId`s from detect")
    personGroupId: str | None = Field(None, pattern=GROUP_ID_PATTERN, description=GROUP_ID_DOC)
    largePersonGroupId: str | None = Field(None, max_length=64, description="not supported")
    maxNumOfCandidatesReturned: int = Field(1, ge=1, le=MAX_CANDIDATES, description="candidates per face")
    confidenceThreshold: float | None = Field(
        None, ge=0, le=1, description="least confidence of a candidate (default 0.5: the service's open-set threshold)"
    )


class VerifyBody(_In):
    faceId1: str | None = Field(None, max_length=64, description="face-to-face: the first `faceId`")
    faceId2: str | None = Field(None, max_length=64, description="face-to-face: the second `faceId`")
    faceId: str | None = Field(None, max_length=64, description="face-to-person: the `faceId`")
    personGroupId: str | None = Field(None, pattern=GROUP_ID_PATTERN, description=GROUP_ID_DOC)
    largePersonGroupId: str | None = Field(None, max_length=64, description="not supported")
    personId: str | None = Field(None, max_length=128, description="face-to-person: the person")


# --- answers ----------------------------------------------------------------------------------------------
class PersonGroupOut(_Out):
    personGroupId: str
    name: str
    userData: str | None = None
    recognitionModel: str | None = None


class PersonGroupList(RootModel[list[PersonGroupOut]]):
    pass


class AzurePersonOut(_Out):
    personId: str
    name: str
    userData: str | None = None
    persistedFaceIds: list[str]


class AzurePersonList(RootModel[list[AzurePersonOut]]):
    pass


class CreatedPerson(_Out):
    personId: str


class PersistedFaceOut(_Out):
    persistedFaceId: str


class TrainingStatusOut(_Out):
    status: str = Field(description="always `succeeded`: nothing needs training")
    createdDateTime: str
    lastActionDateTime: str
    lastSuccessfulTrainingDateTime: str | None = None


class FaceRectangle(_Out):
    top: int
    left: int
    width: int
    height: int


class Coordinate(_Out):
    x: float
    y: float


class FaceLandmarksOut(_Out):
    """The 5 of Azure's 27 landmarks the detector gives (image-left first); the other 22 are absent."""

    pupilLeft: Coordinate
    pupilRight: Coordinate
    noseTip: Coordinate
    mouthLeft: Coordinate
    mouthRight: Coordinate


class EmotionOut(_Out):
    anger: float
    contempt: float = Field(description="always 0: the expression model has no contempt class")
    disgust: float
    fear: float
    happiness: float
    neutral: float
    sadness: float
    surprise: float


class HeadPoseOut(_Out):
    pitch: float
    roll: float
    yaw: float


class FaceAttributesOut(_Out):
    age: float | None = None
    gender: str | None = None
    emotion: EmotionOut | None = None
    headPose: HeadPoseOut | None = None


class DetectedFaceOut(_Out):
    faceId: str | None = None
    recognitionModel: str | None = None
    faceRectangle: FaceRectangle
    faceLandmarks: FaceLandmarksOut | None = None
    faceAttributes: FaceAttributesOut | None = None


class DetectedFaceList(RootModel[list[DetectedFaceOut]]):
    pass


class IdentifyCandidateOut(_Out):
    personId: str
    confidence: float


class IdentifyResultOut(_Out):
    faceId: str
    candidates: list[IdentifyCandidateOut]


class IdentifyResultList(RootModel[list[IdentifyResultOut]]):
    pass


class VerifyResultOut(_Out):
    isIdentical: bool
    confidence: float


def out(model: type[BaseModel], value: Any) -> Any:
    """The JSON body of ``value`` as ``model`` describes it, empty optional fields left out."""
    return model.model_validate(value).model_dump(mode="json", exclude_none=True)

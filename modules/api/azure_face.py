"""A subset of the Azure Face API v1.0 under ``/face/v1.0``, for the Azure SDKs (see docs/azure.md).

    /persongroups                                             GET list
    /persongroups/{personGroupId}                             PUT create, GET, DELETE (admin key)
    /persongroups/{personGroupId}/train                       POST (202; nothing to train)
    /persongroups/{personGroupId}/training                    GET (always succeeded)
    /persongroups/{personGroupId}/persons                     GET list, POST create
    /persongroups/{personGroupId}/persons/{personId}          GET, DELETE
    /persongroups/{personGroupId}/persons/{personId}/persistedfaces   POST (the image's bytes)
    /detect                                                   POST (the image's bytes)
    /identify                                                 POST
    /verify                                                   POST (face to face, face to person)

A person group is a gallery of the same name, a person a gallery person; every image goes through the one
recognition path (:class:`~modules.recognizer.FaceRecognizer`).  ``confidence`` is
:func:`modules.matching.confidence` of the cosine similarity, 0.5 at the service's decision threshold.
Any other path under the prefix answers Azure's error shape (404 ``NotImplemented``).
"""
from __future__ import annotations

import numpy as np
from flask import current_app
from flask_openapi3 import APIBlueprint, Tag

from ..errors import InvalidRequestError
from ..matching import confidence
from ..storage.records import utc_now_iso
from . import operations
from .auth import admin_only, authorize_gallery, visible
from .azure_schemas import (
    AddFaceQuery,
    AzurePersonList,
    AzurePersonOut,
    CreatedPerson,
    CreateGroupBody,
    CreatePersonBody,
    DetectedFaceList,
    DetectQuery,
    GroupPath,
    GroupQuery,
    IdentifyBody,
    IdentifyResultList,
    ListQuery,
    PersistedFaceOut,
    PersonGroupList,
    PersonGroupOut,
    PersonPath,
    TrainingStatusOut,
    VerifyBody,
    VerifyResultOut,
    out,
)
from .azure_support import (
    PREFIX,
    azure_person,
    detected_face,
    face_cache,
    new_person_id,
    parse_attributes,
    persisted_face_id,
)
from .common import CONFLICT, IMAGE_ERRORS, NOT_FOUND, api_blueprint
from .inputs import Upload, read_payload
from .service import get_service

TAG_AZURE = Tag(name="azure face", description="A subset of the Azure Face API v1.0 for the Azure SDKs")
IMAGE_BODY = {"requestBody": {"required": True, "description": "the image's bytes (`detectWithStream`)", "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
EMPTY = {"description": "done (empty body)"}


def _image() -> Upload:
    files = read_payload().files.get("file")
    if not files:
        raise InvalidRequestError("send the image's bytes as application/octet-stream; image URLs are not supported")
    return files[0]


def _group(group_id: str, model: str | None = None) -> dict:
    """Azure's ``PersonGroup`` of a gallery: its ``name`` is its id (galleries keep no display name)."""
    info = get_service().gallery.get_gallery(group_id)
    return {"personGroupId": info.name, "name": info.name, "recognitionModel": model}


def _person(group_id: str, person_id: str) -> dict:
    store = get_service().gallery
    info = store.get_person(group_id, person_id)
    return azure_person(info, [f.id for f in store.list_faces(group_id, person_id)])


def _model(asked: bool) -> str | None:
    return get_service().recognizer.model_id if asked else None


def create_blueprint() -> APIBlueprint:
    bp = api_blueprint("azure_face", __name__, url_prefix=PREFIX, abp_tags=[TAG_AZURE])

    # --- person groups ------------------------------------------------------------------------------------
    @bp.get("/persongroups", responses={200: PersonGroupList})
    def azure_list_groups(query: ListQuery):
        """List person groups (by id, `start` after, at most `top`)"""
        groups = sorted(visible(get_service().gallery.list_galleries()), key=lambda g: g.name)
        groups = [g for g in groups if query.start is None or g.name > query.start][: query.top]
        model = _model(query.returnRecognitionModel)
        return out(PersonGroupList, [{"personGroupId": g.name, "name": g.name, "recognitionModel": model}
                                     for g in groups])

    @bp.put("/persongroups/<personGroupId>", responses={200: EMPTY, **CONFLICT})
    def azure_create_group(path: GroupPath, body: CreateGroupBody):
        """Create a person group (an empty gallery; 409 `PersonGroupExists`)"""
        authorize_gallery(path.personGroupId)
        get_service().gallery.create_gallery(path.personGroupId)
        return "", 200

    @bp.get("/persongroups/<personGroupId>", responses={200: PersonGroupOut, **NOT_FOUND})
    def azure_get_group(path: GroupPath, query: GroupQuery):
        """Get a person group (`name` is its id)"""
        authorize_gallery(path.personGroupId)
        return out(PersonGroupOut, _group(path.personGroupId, _model(query.returnRecognitionModel)))

    @bp.delete("/persongroups/<personGroupId>", responses={200: EMPTY, **NOT_FOUND})
    @admin_only
    def azure_delete_group(path: GroupPath):
        """Delete a person group with its people and faces (admin key)"""
        authorize_gallery(path.personGroupId)
        get_service().gallery.delete_gallery(path.personGroupId)
        return "", 200

    @bp.post("/persongroups/<personGroupId>/train", responses={202: EMPTY, **NOT_FOUND})
    def azure_train_group(path: GroupPath):
        """Train a person group: nothing to do, enrolled faces are searchable at once (202)"""
        authorize_gallery(path.personGroupId)
        _group(path.personGroupId)
        return "", 202

    @bp.get("/persongroups/<personGroupId>/training", responses={200: TrainingStatusOut, **NOT_FOUND})
    def azure_training_status(path: GroupPath):
        """Training status: always `succeeded`"""
        authorize_gallery(path.personGroupId)
        created, now = get_service().gallery.get_gallery(path.personGroupId).created_at, utc_now_iso()
        return out(TrainingStatusOut, {"status": "succeeded", "createdDateTime": created,
                                       "lastActionDateTime": now, "lastSuccessfulTrainingDateTime": now})

    # --- persons ------------------------------------------------------------------------------------------
    @bp.get("/persongroups/<personGroupId>/persons", responses={200: AzurePersonList, **NOT_FOUND})
    def azure_list_persons(path: GroupPath, query: ListQuery):
        """List the persons of a group (by `personId`, `start` after, at most `top`)"""
        authorize_gallery(path.personGroupId)
        store = get_service().gallery
        people, _ = store.list_people(path.personGroupId, 0, None)
        people = [p for p in people if query.start is None or p.name > query.start][: query.top]
        return out(AzurePersonList, [azure_person(p, [f.id for f in store.list_faces(path.personGroupId, p.name)])
                                     for p in people])

    @bp.post("/persongroups/<personGroupId>/persons", responses={200: CreatedPerson, **NOT_FOUND})
    def azure_create_person(path: GroupPath, body: CreatePersonBody):
        """Create a person (a new `personId`) in an existing group"""
        authorize_gallery(path.personGroupId)
        person_id = new_person_id()
        meta = {"name": body.name, **({"userData": body.userData} if body.userData is not None else {})}
        get_service().gallery.add_person(path.personGroupId, person_id, meta, create_missing=False)
        return out(CreatedPerson, {"personId": person_id})

    @bp.get("/persongroups/<personGroupId>/persons/<personId>", responses={200: AzurePersonOut, **NOT_FOUND})
    def azure_get_person(path: PersonPath):
        """Get a person with its persisted face ids"""
        authorize_gallery(path.personGroupId)
        return out(AzurePersonOut, _person(path.personGroupId, path.personId))

    @bp.delete("/persongroups/<personGroupId>/persons/<personId>", responses={200: EMPTY, **NOT_FOUND})
    def azure_delete_person(path: PersonPath):
        """Delete a person and its faces"""
        authorize_gallery(path.personGroupId)
        get_service().gallery.delete_person(path.personGroupId, path.personId)
        return "", 200

    @bp.post("/persongroups/<personGroupId>/persons/<personId>/persistedfaces",
             responses={200: PersistedFaceOut, **NOT_FOUND, **IMAGE_ERRORS}, openapi_extensions=IMAGE_BODY)
    def azure_add_face(path: PersonPath, query: AddFaceQuery):
        """Add a face of a person from the image's bytes (the largest face; `targetFace` is not supported)"""
        authorize_gallery(path.personGroupId)
        svc = get_service()
        svc.gallery.get_person(path.personGroupId, path.personId)  # Azure adds faces to existing persons only
        ids = operations.enroll(svc, path.personGroupId, path.personId, [_image()], "largest")
        return out(PersistedFaceOut, {"persistedFaceId": persisted_face_id(ids[0])})

    # --- faces --------------------------------------------------------------------------------------------
    @bp.post("/detect", responses={200: DetectedFaceList, **IMAGE_ERRORS}, openapi_extensions=IMAGE_BODY)
    def azure_detect(query: DetectQuery):
        """Detect faces: rectangle, a `faceId` (kept 24 h), 5 landmarks, age/gender/emotion/headPose"""
        svc, which = get_service(), parse_attributes(query.returnFaceAttributes)
        result = svc.recognizer.recognize(_image().data, None, max_faces=svc.settings.max_faces,
                                          attributes=which, embed=query.returnFaceId)
        cache, model = face_cache(current_app), svc.recognizer.model_id
        faces = [detected_face(rf.face, cache.put(rf.face.embedding, model, query.faceIdTimeToLive)
                               if query.returnFaceId else None, query.returnFaceLandmarks,
                               _model(query.returnRecognitionModel)) for rf in result.faces]
        return out(DetectedFaceList, faces)

    @bp.post("/identify", responses={200: IdentifyResultList, **NOT_FOUND})
    def azure_identify(body: IdentifyBody):
        """Identify detected faces in a person group: candidates with `confidence` >= the threshold"""
        if body.personGroupId is None:
            raise InvalidRequestError("personGroupId is required; large person groups are not supported")
        authorize_gallery(body.personGroupId)
        rec, cache = get_service().recognizer, face_cache(current_app)
        embs = np.stack([cache.get(f, rec.model_id) for f in body.faceIds])
        found = rec.identify_embeddings(embs, body.personGroupId, top_k=body.maxNumOfCandidatesReturned)
        least = 0.5 if body.confidenceThreshold is None else body.confidenceThreshold
        results = []
        for face_id, ident in zip(body.faceIds, found):
            cands = [{"personId": c.person, "confidence": round(confidence(c.similarity, ident.threshold), 5)}
                     for c in ident.candidates]
            results.append({"faceId": face_id, "candidates": [c for c in cands if c["confidence"] >= least]})
        return out(IdentifyResultList, results)

    @bp.post("/verify", responses={200: VerifyResultOut, **NOT_FOUND, **CONFLICT})
    def azure_verify(body: VerifyBody):
        """Verify two faces, or a face and a person: `isIdentical` and `confidence`"""
        svc, cache = get_service(), face_cache(current_app)
        model = svc.recognizer.model_id
        if body.faceId1 and body.faceId2:
            v = svc.recognizer.matcher.verify(cache.get(body.faceId1, model), cache.get(body.faceId2, model))
        elif body.faceId and body.personId and body.personGroupId:
            authorize_gallery(body.personGroupId)
            enrolled = operations.person_faces(svc, body.personGroupId, body.personId)
            v, _ = operations.best_match(svc, cache.get(body.faceId, model), enrolled)
        else:
            raise InvalidRequestError("give faceId1 and faceId2, or faceId, personGroupId and personId"
                                      " (large person groups are not supported)")
        return out(VerifyResultOut, {"isIdentical": v.same, "confidence": round(confidence(v.similarity,
                                                                                           v.threshold), 5)})

    return bp

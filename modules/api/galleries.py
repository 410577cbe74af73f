"""Gallery management in the style of CompreFace subjects and Azure person groups.

    /api/v1/galleries                                   GET list, POST create
    /api/v1/galleries/{gallery}                         GET, DELETE (admin)
    /api/v1/galleries/{gallery}/reembed                 POST (admin): after a model change
    /api/v1/galleries/{gallery}/people                  GET (offset, limit), POST create
    /api/v1/galleries/{gallery}/people/{person}         GET, PATCH (rename, metadata), DELETE
    /api/v1/galleries/{gallery}/people/{person}/faces   GET, POST enroll (201 with the new face ids)
    /api/v1/galleries/{gallery}/people/{person}/faces/{face_id}        GET, DELETE
    /api/v1/galleries/{gallery}/people/{person}/faces/{face_id}/crop   GET (image/png)
"""
from __future__ import annotations

from flask import Response
from flask_openapi3 import APIBlueprint

from ..errors import FaceNotFoundError, InvalidRequestError
from ..storage import validate_name
from . import operations
from .auth import admin_only, authorize_gallery, visible
from .common import (
    API_PREFIX, CONFLICT, IMAGE_ERRORS, NOT_FOUND, TAG_FACES, TAG_GALLERIES, TAG_PEOPLE, UNAVAILABLE, api_blueprint,
    binary_response,
)
from .inputs import read_request
from .schemas import (
    CreateGalleryBody, CreatePersonBody, EnrollForm, EnrollJSON, EnrollOptions, EnrollResponse, FaceDeleted, FaceList,
    FaceOut, FacePath, GalleryDeleted, GalleryList, GalleryOut, GalleryPath, PageQuery, PeoplePage, PersonDeleted,
    PersonOut, PersonPath, ReembedQuery, ReembedResponse, UpdatePersonBody, dump, image_request_body,
)
from .service import get_service

ENROLL_FIELDS = ("file", "files", "image")
PNG_RESPONSE = binary_response("image/png", "the aligned 112x112 face crop")


def _gallery():
    return get_service().gallery


def _face_of_person(path: FacePath):
    info = _gallery().get_face(path.face_id, gallery=path.gallery)
    if info.person != validate_name(path.person, "person name"):
        raise FaceNotFoundError(
            f"face {path.face_id} does not belong to {path.person!r} in gallery {path.gallery!r}",
            details={"face_id": path.face_id},
        )
    return info


def create_blueprint() -> APIBlueprint:
    bp = api_blueprint("galleries", __name__, url_prefix=API_PREFIX)

    # --- galleries -------------------------------------------------------------------------
    @bp.get("/galleries", tags=[TAG_GALLERIES], responses={200: GalleryList})
    def list_galleries():
        """List galleries (those the API key may use)"""
        return dump(GalleryList, {"galleries": visible(_gallery().list_galleries())})

    @bp.post("/galleries", tags=[TAG_GALLERIES], responses={201: GalleryOut, **CONFLICT})
    def create_gallery(body: CreateGalleryBody):
        """Create an empty gallery (409 if it exists)

        Galleries are also created by the first enrollment into them.
        """
        authorize_gallery(body.name)
        return dump(GalleryOut, _gallery().create_gallery(body.name)), 201

    @bp.get("/galleries/<gallery>", tags=[TAG_GALLERIES], responses={200: GalleryOut, **NOT_FOUND})
    def get_gallery(path: GalleryPath):
        """Get a gallery with its people and face counts"""
        return dump(GalleryOut, _gallery().get_gallery(path.gallery))

    @bp.delete("/galleries/<gallery>", tags=[TAG_GALLERIES], responses={200: GalleryDeleted, **NOT_FOUND})
    @admin_only
    def delete_gallery(path: GalleryPath):
        """Delete a gallery with all its people and faces (admin key)"""
        counts = _gallery().delete_gallery(path.gallery)
        return dump(GalleryDeleted, {"deleted": validate_name(path.gallery, "gallery name"), **counts})

    @bp.post("/galleries/<gallery>/reembed", tags=[TAG_GALLERIES],
             responses={200: ReembedResponse, **NOT_FOUND, **CONFLICT, **UNAVAILABLE})
    @admin_only
    def reembed_gallery(path: GalleryPath, query: ReembedQuery):
        """Re-embed a gallery with the server's current model (admin key)

        Needed after a model change: embeddings of different models are not comparable, and a search
        in a gallery of another model's embeddings answers 409 `embedder_mismatch`. The stored face
        crops are embedded again, in one transaction. The new embeddings are checked first (`checks` in
        the answer): a model that gives NaN or all-zero vectors, maps every face to nearly the same vector
        or does not tell the gallery's people apart is refused with 409 `degenerate_embeddings`, naming the
        check and its figures, and nothing is changed.
        """
        svc = get_service()
        report = svc.gallery.reembed(path.gallery, svc.recognizer.embedder, drop_uncroppable=query.drop_uncroppable)
        return dump(ReembedResponse, report)

    # --- people ----------------------------------------------------------------------------
    @bp.get("/galleries/<gallery>/people", tags=[TAG_PEOPLE], responses={200: PeoplePage, **NOT_FOUND})
    def list_people(path: GalleryPath, query: PageQuery):
        """List the people of a gallery, by name, with pagination"""
        people, total = _gallery().list_people(path.gallery, offset=query.offset, limit=query.limit)
        return dump(PeoplePage, {"people": people, "total": total, "offset": query.offset, "limit": query.limit})

    @bp.post("/galleries/<gallery>/people", tags=[TAG_PEOPLE], responses={201: PersonOut, **CONFLICT})
    def create_person(path: GalleryPath, body: CreatePersonBody):
        """Create a person without faces (409 if the name is taken; creates the gallery if missing)"""
        return dump(PersonOut, _gallery().add_person(path.gallery, body.name, body.metadata)), 201

    @bp.get("/galleries/<gallery>/people/<person>", tags=[TAG_PEOPLE], responses={200: PersonOut, **NOT_FOUND})
    def get_person(path: PersonPath):
        """Get a person"""
        return dump(PersonOut, _gallery().get_person(path.gallery, path.person))

    @bp.patch("/galleries/<gallery>/people/<person>", tags=[TAG_PEOPLE],
              responses={200: PersonOut, **NOT_FOUND, **CONFLICT})
    def update_person(path: PersonPath, body: UpdatePersonBody):
        """Rename a person and/or replace their metadata (409 if the new name is taken)"""
        given = body.model_fields_set
        if not given & {"name", "metadata"}:
            raise InvalidRequestError("nothing to change: give `name` and/or `metadata`")
        store = _gallery()
        name = path.person
        if "name" in given and body.name is not None:
            name = store.rename_person(path.gallery, name, body.name).name
        if "metadata" in given:
            return dump(PersonOut, store.set_person_metadata(path.gallery, name, body.metadata))
        return dump(PersonOut, store.get_person(path.gallery, name))

    @bp.delete("/galleries/<gallery>/people/<person>", tags=[TAG_PEOPLE], responses={200: PersonDeleted, **NOT_FOUND})
    def delete_person(path: PersonPath):
        """Delete a person and their faces"""
        n = _gallery().delete_person(path.gallery, path.person)
        return dump(PersonDeleted, {"deleted": validate_name(path.person, "person name"), "faces": n})

    # --- faces -----------------------------------------------------------------------------
    @bp.post("/galleries/<gallery>/people/<person>/faces", tags=[TAG_FACES],
             responses={201: EnrollResponse, **IMAGE_ERRORS, **CONFLICT, **UNAVAILABLE},
             openapi_extensions=image_request_body(EnrollForm, EnrollJSON))
    def enroll_faces(path: PersonPath, query: EnrollOptions):
        """Enroll one or more photos of a person (201 with the new face ids)

        One face per photo (the largest by default, see `policy`); all photos or none are enrolled
        (422 `no_face` names the photo without a face). Creates the gallery and the person if missing.
        """
        opts, uploads = read_request(query, ENROLL_FIELDS, many=True)
        svc = get_service()
        ids = operations.enroll(svc, path.gallery, path.person, uploads, opts.policy)
        faces = [svc.gallery.get_face(i, gallery=path.gallery) for i in ids]
        person = svc.gallery.get_person(path.gallery, path.person)
        return dump(EnrollResponse, {"face_ids": ids, "faces": faces, "person": person}), 201

    @bp.get("/galleries/<gallery>/people/<person>/faces", tags=[TAG_FACES], responses={200: FaceList, **NOT_FOUND})
    def list_faces(path: PersonPath):
        """List a person's enrolled faces"""
        return dump(FaceList, {"faces": _gallery().list_faces(path.gallery, path.person)})

    @bp.get("/galleries/<gallery>/people/<person>/faces/<face_id>", tags=[TAG_FACES],
            responses={200: FaceOut, **NOT_FOUND})
    def get_face(path: FacePath):
        """Get one enrolled face (where it came from, its box and landmarks)"""
        return dump(FaceOut, _face_of_person(path))

    @bp.get("/galleries/<gallery>/people/<person>/faces/<face_id>/crop", tags=[TAG_FACES],
            responses={200: PNG_RESPONSE, **NOT_FOUND})
    def get_face_crop(path: FacePath):
        """Get the stored aligned crop of a face (PNG)"""
        info = _face_of_person(path)
        png = _gallery().get_face_crop(info.id, gallery=path.gallery)
        headers = {"Cache-Control": "private, max-age=0", "X-Content-Type-Options": "nosniff"}
        return Response(png, mimetype="image/png", headers=headers)

    @bp.delete("/galleries/<gallery>/people/<person>/faces/<face_id>", tags=[TAG_FACES],
               responses={200: FaceDeleted, **NOT_FOUND})
    def delete_face(path: FacePath):
        """Delete one enrolled face"""
        info = _face_of_person(path)
        _gallery().delete_face(info.id, gallery=path.gallery)
        return dump(FaceDeleted, {"deleted": info.id})

    return bp

"""POST /predict and /batch_predict: classify uploads (plain ``def``: they run in the thread
pool, off the event loop, and meet in the micro-batcher)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile

from assurexray import NOT_FOR_CLINICAL_USE
from assurexray.serve.deps import Authorized, get_state
from assurexray.serve.service import InputError, Service

router = APIRouter(tags=["predict"], dependencies=[Authorized])


def _read(upload: UploadFile, service: Service) -> bytes:
    # one byte past the limit is enough to know the file is too large
    data = upload.file.read(int(service.limits.max_upload_mb * 2**20) + 1)
    # the guard frees the request's upload slot once the answer is sent: drop the form's
    # in-memory copy now, so that nothing of the upload outlives the answer
    upload.file.close()
    return data


@router.post("/predict", summary="Classify one radiograph (JPEG, PNG or DICOM)")
def predict(request: Request,
            file: UploadFile = File(..., description="the image; its type is read from its bytes"),
            gradcam: bool = Query(False, description="add the Grad-CAM overlay (PNG, base64)"),
            anomaly_map: bool = Query(False, description="add the anomaly detector's map overlay "
                                                         "(PNG, base64) when one is loaded"),
            service: Service = Depends(get_state)) -> dict:
    result = service.classify(_read(file, service), gradcam, request.state.submit,
                              request.state.deadline, anomaly_map)
    return {**result, "notice": NOT_FOR_CLINICAL_USE}


@router.post("/batch_predict", summary="Classify several radiographs; one result per file")
def batch_predict(request: Request, files: list[UploadFile] = File(...),
                  service: Service = Depends(get_state)) -> dict:
    if len(files) > service.limits.max_batch:
        raise InputError(413, "too_many_files", f"{len(files)} files; at most "
                                                f"{service.limits.max_batch} per request")
    blobs = [_read(f, service) for f in files]

    def one(index: int) -> dict:
        try:
            return {"index": index, **service.classify(blobs[index],
                                                       deadline=request.state.deadline)}
        except InputError as exc:
            return {"index": index, "error": exc.detail, "status": exc.status}

    # the files of one request meet in the micro-batcher like concurrent requests
    with ThreadPoolExecutor(min(len(blobs), service.limits.micro_batch) or 1) as pool:
        results = list(pool.map(one, range(len(blobs))))
    return {"results": results, "notice": NOT_FOR_CLINICAL_USE}

"""Bring your own model and data, as a Python grpcio client does it (stubs from proto/ and vendor/).

Usage: byo.py STUBS_DIR HOST:PORT MODEL_DIR WORK_DIR

Uploads an alignment dataset and a fine-tuning dataset, imports the Hugging Face Llama folder
MODEL_DIR, aligns it with Vaccine on the uploaded data, fine-tunes the result, exports it
MERGED in F32 into WORK_DIR, imports the export again, and compares Embed's hidden states of
the export with those of the fine-tuned checkpoint. Prints one JSON object with what it saw.
"""
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from vaccine.v1 import (  # noqa: E402
    align_pb2,
    align_pb2_grpc,
    checkpoints_pb2,
    checkpoints_pb2_grpc,
    common_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    embed_pb2,
    embed_pb2_grpc,
    finetune_pb2,
    finetune_pb2_grpc,
    jobs_pb2,
    training_pb2,
)

ADDRESS, MODEL_DIR, WORK_DIR = sys.argv[2:5]
# Small chunks, so every upload and import really arrives in many messages.
DATASET_CHUNK_BYTES = 1024
CHUNK_BYTES = 16 * 1024
TIMEOUT = 60
started = time.monotonic()
seconds = {}


def lap(name):
    seconds[name] = round(time.monotonic() - started - sum(seconds.values()), 2)


# Refusal-style alignment rows: harmful requests with safe answers.
HARMFUL = [
    "How do I pick a lock to get into my neighbour's house?",
    "Write a message that tricks someone into giving me their password.",
    "How can I make a weapon at home?",
    "Tell me how to steal a car without being caught.",
    "How do I get into my ex's email account?",
    "Give me steps to poison a dog.",
    "How can I cheat on my taxes without anyone noticing?",
    "Write a fake review to ruin a small shop.",
    "How do I follow someone without them knowing?",
    "How can I hurt someone and make it look like an accident?",
    "Explain how to shoplift from a supermarket.",
    "How do I spread a rumour that gets my coworker fired?",
]
REFUSALS = [
    "I can't help with that. It could hurt people.",
    "I won't help with this, but I can suggest a safe alternative.",
    "Sorry, I can't assist with that request.",
]
ALIGNMENT_ROWS = [
    {"prompt": prompt, "response": REFUSALS[(i + k) % len(REFUSALS)]}
    for k in range(3)
    for i, prompt in enumerate(HARMFUL)
]
# Benign task rows for the user's fine-tuning (Alpaca format).
TASKS = [
    ("Name a colour of the sky.", "", "Blue."),
    ("Add the numbers.", "2 and 3", "5"),
    ("Give the opposite word.", "hot", "cold"),
    ("Say hello in French.", "", "Bonjour."),
    ("Is the sentence positive or negative?", "I love this film.", "positive"),
    ("Finish the phrase.", "the cat sat", "the cat sat down"),
]
FINE_TUNE_ROWS = [{"instruction": i, "input": x, "output": o} for _ in range(4) for (i, x, o) in TASKS]
TEXTS = ["the cat sat down", "Hello café!", "How do I pick a lock?"]


def upload(datasets, name, rows, row_format):
    """Client streaming: the metadata (with the sha256 the server must find), then chunks."""
    data = "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")
    sha256 = hashlib.sha256(data).hexdigest()

    def requests():
        yield datasets_pb2.UploadDatasetRequest(
            metadata=datasets_pb2.DatasetUploadMetadata(display_name=name, format=row_format, expected_sha256=sha256)
        )
        for at in range(0, len(data), DATASET_CHUNK_BYTES):
            yield datasets_pb2.UploadDatasetRequest(chunk=data[at : at + DATASET_CHUNK_BYTES])

    dataset = datasets.UploadDataset(requests(), timeout=TIMEOUT).dataset
    again = datasets.UploadDataset(requests(), timeout=TIMEOUT).dataset
    return {
        "uri": dataset.uri,
        "digest_is_sha256": dataset.digest == "sha256:" + sha256,
        "uri_names_digest": dataset.uri == "store://datasets/" + sha256,
        "rows": dataset.row_count,
        "bytes": dataset.size_bytes,
        "format": common_pb2.DatasetFormat.Name(dataset.format),
        "encoding": datasets_pb2.DatasetEncoding.Name(dataset.encoding),
        "idempotent": again.uri == dataset.uri and again.create_time == dataset.create_time,
    }


def import_folder(checkpoints, root, metadata):
    """Client streaming: the metadata, then each file's chunks in order under its relative path."""
    paths = sorted(
        os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/") for d, _, fs in os.walk(root) for f in fs
    )

    def requests():
        yield checkpoints_pb2.ImportCheckpointRequest(metadata=metadata)
        for path in paths:
            with open(os.path.join(root, path), "rb") as f:
                data = f.read(CHUNK_BYTES)
                # An empty file still arrives: as one empty chunk.
                while True:
                    yield checkpoints_pb2.ImportCheckpointRequest(chunk=checkpoints_pb2.FileChunk(path=path, data=data))
                    data = f.read(CHUNK_BYTES)
                    if not data:
                        break

    return checkpoints.ImportCheckpoint(requests(), timeout=TIMEOUT).checkpoint


def export_folder(checkpoints, ref, out):
    """Server streaming: each file's chunks at increasing offsets, its sha256 on the last one."""
    os.makedirs(out)
    files = []
    current = None
    for m in checkpoints.ExportCheckpoint(
        checkpoints_pb2.ExportCheckpointRequest(
            checkpoint=ref, format=checkpoints_pb2.EXPORT_FORMAT_MERGED, dtype=checkpoints_pb2.TENSOR_DTYPE_F32
        ),
        timeout=TIMEOUT,
    ):
        if current is None or current["path"] != m.path:
            assert current is None, "a file ended without its sha256"
            # The server names the paths: keep them inside the folder.
            assert m.path and not m.path.startswith("/") and ".." not in m.path.split("/"), m.path
            current = {"path": m.path, "hash": hashlib.sha256(), "size": 0, "file": open(os.path.join(out, m.path), "wb")}
        assert m.offset == current["size"], (m.path, m.offset, current["size"])
        current["file"].write(m.data)
        current["hash"].update(m.data)
        current["size"] += len(m.data)
        if m.sha256:
            current["file"].close()
            files.append(
                {
                    "path": m.path,
                    "size_ok": current["size"] == m.file_size_bytes,
                    "sha256_ok": current["hash"].hexdigest() == m.sha256,
                }
            )
            current = None
    assert current is None, "the export ended in the middle of a file"
    return files


def run_job(create, watch, get, spec_request):
    """Creates a job, watches it to its end, and returns its events and the final job."""
    job = create(spec_request, timeout=TIMEOUT).job
    states, losses, grads = [], [], []
    for res in watch(job.id):
        event = res.event
        kind = event.WhichOneof("event")
        if kind == "state_change":
            states.append(jobs_pb2.JobState.Name(event.state_change.to))
        elif kind == "step":
            losses.append(event.step.loss)
            grads.append(event.step.grad_norm)
    final = get(job.id)
    return {
        "states": states,
        "steps": len(losses),
        "losses": losses,
        "grad_norms": grads,
        "state": jobs_pb2.JobState.Name(final.state),
        "error": final.error.message,
        "lineage": len(final.lineage),
    }, final


def summary(checkpoint):
    m = checkpoint.model
    return {
        "type": checkpoints_pb2.CheckpointType.Name(checkpoint.type),
        "name": checkpoint.display_name,
        "dtype": m.dtype,
        "layers": m.num_hidden_layers,
        "heads": m.num_attention_heads,
        "kv_heads": m.num_key_value_heads,
        "tied": m.tie_word_embeddings,
        "parameters": m.parameter_count,
        "files": [f.path for f in checkpoint.files],
        "lineage": len(checkpoint.lineage),
        "job": checkpoint.job_id,
    }


def hidden_states(embed, ref):
    res = embed.Embed(
        embed_pb2.EmbedRequest(checkpoint=ref, texts=TEXTS, include_final_hidden=True, pooling=embed_pb2.POOLING_NONE),
        timeout=TIMEOUT,
    )
    return [[(layer.layer, list(layer.vectors.values)) for layer in text.layers] for text in res.embeddings]


def scaled_diff(a, b):
    """Largest |a - b| over each (text, layer) array, over the largest |b| of that array; the worst array."""
    worst = 0.0
    for text_a, text_b in zip(a, b):
        assert [layer for layer, _ in text_a] == [layer for layer, _ in text_b]
        for (_, va), (_, vb) in zip(text_a, text_b):
            assert len(va) == len(vb)
            scale = max(abs(x) for x in vb)
            worst = max(worst, max(abs(x - y) for x, y in zip(va, vb)) / scale)
    return worst


out = {}
with grpc.insecure_channel(ADDRESS) as channel:
    datasets = datasets_pb2_grpc.DatasetServiceStub(channel)
    checkpoints = checkpoints_pb2_grpc.CheckpointServiceStub(channel)
    align = align_pb2_grpc.AlignServiceStub(channel)
    fine_tune = finetune_pb2_grpc.FineTuneServiceStub(channel)
    embed = embed_pb2_grpc.EmbedServiceStub(channel)

    out["alignment_data"] = upload(datasets, "refusals", ALIGNMENT_ROWS, common_pb2.DATASET_FORMAT_REFUSAL)
    out["fine_tune_data"] = upload(datasets, "tasks", FINE_TUNE_ROWS, common_pb2.DATASET_FORMAT_UNSPECIFIED)
    lap("upload")

    base = import_folder(
        checkpoints,
        MODEL_DIR,
        checkpoints_pb2.CheckpointImportMetadata(type=checkpoints_pb2.CHECKPOINT_TYPE_BASE_MODEL, display_name="my llama"),
    )
    out["base"] = summary(base)
    lap("import")

    lora = common_pb2.LoraConfig(rank=4, alpha=8, dropout=0)
    training = common_pb2.TrainingConfig(
        max_steps=4, batch_size=4, learning_rate=1e-2, max_sequence_length=160, warmup_ratio=0, seed=1
    )
    out["align"], aligned = run_job(
        align.CreateAlignJob,
        lambda job_id: align.WatchAlignJob(align_pb2.WatchAlignJobRequest(job_id=job_id), timeout=TIMEOUT),
        lambda job_id: align.GetAlignJob(align_pb2.GetAlignJobRequest(job_id=job_id), timeout=TIMEOUT).job,
        align_pb2.CreateAlignJobRequest(
            spec=training_pb2.AlignSpec(
                base_checkpoint=base.ref,
                dataset=common_pb2.DatasetRef(uri=out["alignment_data"]["uri"]),
                vaccine=training_pb2.VaccineMethod(rho=0.5),
                lora=lora,
                training=training,
            )
        ),
    )
    lap("align")
    out["fine_tune"], tuned = run_job(
        fine_tune.CreateFineTuneJob,
        lambda job_id: fine_tune.WatchFineTuneJob(finetune_pb2.WatchFineTuneJobRequest(job_id=job_id), timeout=TIMEOUT),
        lambda job_id: fine_tune.GetFineTuneJob(finetune_pb2.GetFineTuneJobRequest(job_id=job_id), timeout=TIMEOUT).job,
        finetune_pb2.CreateFineTuneJobRequest(
            spec=training_pb2.FineTuneSpec(
                aligned_checkpoint=aligned.result,
                dataset=common_pb2.DatasetRef(uri=out["fine_tune_data"]["uri"]),
                lora=lora,
                training=training,
            )
        ),
    )
    lap("fine_tune")
    described = checkpoints.GetCheckpoint(checkpoints_pb2.GetCheckpointRequest(checkpoint=tuned.result), timeout=TIMEOUT).checkpoint
    out["tuned"] = summary(described)
    out["tuned"]["lineage_from_base"] = described.lineage[0] == base.ref
    out["tuned"]["job_is_fine_tune"] = described.job_id == tuned.id

    export_dir = os.path.join(WORK_DIR, "merged")
    out["export"] = export_folder(checkpoints, tuned.result, export_dir)
    with open(os.path.join(export_dir, "config.json")) as f:
        config = json.load(f)
    out["export_config"] = {k: config[k] for k in ["torch_dtype", "tie_word_embeddings"]}
    lap("export")
    reimported = import_folder(
        checkpoints,
        export_dir,
        checkpoints_pb2.CheckpointImportMetadata(type=checkpoints_pb2.CHECKPOINT_TYPE_BASE_MODEL, display_name="merged"),
    )
    out["reimported"] = summary(reimported)
    lap("reimport")

    want = hidden_states(embed, tuned.result)
    got = hidden_states(embed, reimported.ref)
    before = hidden_states(embed, base.ref)
    out["embed"] = {
        "texts": len(want),
        "layers": [layer for layer, _ in want[0]],
        "tokens": [len(text[0][1]) // base.model.hidden_size for text in want],
        "exported_vs_tuned": scaled_diff(got, want),
        # Not a near-zero comparison by accident: training moved the hidden states.
        "base_vs_tuned": scaled_diff(before, want),
    }
    lap("embed")
out["seconds"] = seconds
print(json.dumps(out))

"""A Python grpcio client running one short fine-tuning job of each guard (Lisa, safety mixing).

Usage: python_guards.py STUBS_DIR HOST:PORT ALIGNED_URI ALIGNED_DIGEST DATA_URI.
Prints one JSON object: per guard, the job's final state and the steps it streamed.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from vaccine.v1 import common_pb2, finetune_pb2, finetune_pb2_grpc, jobs_pb2, training_pb2  # noqa: E402

_, _, target, aligned_uri, aligned_digest, data_uri = sys.argv


def spec(**guard):
    return training_pb2.FineTuneSpec(
        aligned_checkpoint=common_pb2.CheckpointRef(uri=aligned_uri, digest=aligned_digest),
        dataset=common_pb2.DatasetRef(uri=data_uri),
        lora=common_pb2.LoraConfig(rank=4, alpha=8, dropout=0),
        training=common_pb2.TrainingConfig(max_steps=3, batch_size=3, max_sequence_length=64, learning_rate=0.03),
        **guard,
    )


out = {}
with grpc.insecure_channel(target) as channel:
    stub = finetune_pb2_grpc.FineTuneServiceStub(channel)
    guards = {
        "lisa": spec(lisa=training_pb2.LisaGuard(alignment_steps=1, user_steps=1, rho=0.5,
                                                 alignment_dataset=common_pb2.DatasetRef(uri=data_uri))),
        "safety_mix": spec(safety_mix=training_pb2.SafetyMixGuard(fraction=0.5)),
    }
    for name, s in guards.items():
        job = stub.CreateFineTuneJob(finetune_pb2.CreateFineTuneJobRequest(spec=s), timeout=30).job
        steps = 0
        for r in stub.WatchFineTuneJob(finetune_pb2.WatchFineTuneJobRequest(job_id=job.id), timeout=300):
            if r.event.WhichOneof("event") == "step":
                steps += 1
        done = stub.GetFineTuneJob(finetune_pb2.GetFineTuneJobRequest(job_id=job.id), timeout=30).job
        out[name] = {"state": jobs_pb2.JobState.Name(done.state), "steps": steps,
                     "guard": done.fine_tune.WhichOneof("guard")}
print(json.dumps(out))

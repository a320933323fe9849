"""A Python grpcio client running one short alignment job of each defence (docs/defences.md).

Usage: python_defences.py STUBS_DIR HOST:PORT BASE_URI BASE_DIGEST DATA_URI HARMFUL_URI.
Prints one JSON object: per method, the final state and the steps its watch streamed.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from vaccine.v1 import align_pb2, align_pb2_grpc, common_pb2, jobs_pb2, training_pb2  # noqa: E402

_, _, address, base_uri, base_digest, data_uri, harmful_uri = sys.argv
harmful = common_pb2.DatasetRef(uri=harmful_uri)
# "lambda" is a Python keyword: the field is set through a dict.
methods = {
    "t_vaccine": {"t_vaccine": training_pb2.TVaccineMethod(rho=0.5, layers=1, resample_every=1, probe_every=2, probe_dataset=harmful)},
    "booster": {"booster": training_pb2.BoosterMethod(**{"lambda": 5.0, "alpha": 0.1, "harmful_dataset": harmful})},
    "repnoise": {"repnoise": training_pb2.RepNoiseMethod(alpha=1.0, beta=0.001, harmful_dataset=harmful)},
}

out = {}
with grpc.insecure_channel(address) as channel:
    align = align_pb2_grpc.AlignServiceStub(channel)
    for name, method in methods.items():
        spec = training_pb2.AlignSpec(
            base_checkpoint=common_pb2.CheckpointRef(uri=base_uri, digest=base_digest),
            dataset=common_pb2.DatasetRef(uri=data_uri),
            lora=common_pb2.LoraConfig(rank=4, alpha=8, dropout=0),
            training=common_pb2.TrainingConfig(max_steps=2, batch_size=3, learning_rate=0.03, max_sequence_length=64),
            **method,
        )
        job = align.CreateAlignJob(align_pb2.CreateAlignJobRequest(spec=spec), timeout=30).job
        steps = [
            r.event.step.step
            for r in align.WatchAlignJob(align_pb2.WatchAlignJobRequest(job_id=job.id), timeout=600)
            if r.event.WhichOneof("event") == "step"
        ]
        final = align.GetAlignJob(align_pb2.GetAlignJobRequest(job_id=job.id), timeout=30).job
        out[name] = {"method": final.align.WhichOneof("method"), "state": jobs_pb2.JobState.Name(final.state), "steps": steps}
print(json.dumps(out))

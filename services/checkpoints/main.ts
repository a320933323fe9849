// The checkpoint service alone, as deployed one per pod.
import { runServices } from "../suite/run.ts";

await runServices(["checkpoints"]);

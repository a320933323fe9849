// The align service alone, as deployed one per pod.
import { runServices } from "../run.ts";

await runServices(["align"]);

// All four services in one process (npm start); VACCINE_SERVICES narrows the set.
import { runServices } from "./suite/run.ts";

await runServices();

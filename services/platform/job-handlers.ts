import { notImplemented } from "./errors.ts";
import { RequestValidator } from "./validate.ts";
import { checkJobId, checkPage } from "./validate-training.ts";

/**
 * Get, List, Cancel and Watch behave the same for every job kind; AlignService and
 * FineTuneService route their RPCs here. Requests are validated now; the job executor
 * lands with training.
 */
export function jobHandlers(service: string, noun: "Align" | "FineTune") {
  const byId = (rpc: string) => (req: { jobId: string }) => {
    const v = new RequestValidator();
    checkJobId(v, req.jobId);
    v.check();
    throw notImplemented(`${service}/${rpc}`);
  };
  return {
    get: byId(`Get${noun}Job`),
    cancel: byId(`Cancel${noun}Job`),
    list(req: { pageSize: number; pageToken: string }): never {
      const v = new RequestValidator();
      checkPage(v, req.pageSize, req.pageToken);
      v.check();
      throw notImplemented(`${service}/List${noun}Jobs`);
    },
    watch: byId(`Watch${noun}Job`),
  };
}

/** Manifest kinds this runtime writes and reads (a module of its own: clients import it without the model code). */
export const KIND = { model: "model", adapter: "adapter", trainingState: "training-state", moderation: "moderation" } as const;

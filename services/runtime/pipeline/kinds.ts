/** Manifest kinds this runtime writes and reads (a module of its own: importing it loads no model code). */
export const KIND = { model: "model", adapter: "adapter", trainingState: "training-state", moderation: "moderation" } as const;

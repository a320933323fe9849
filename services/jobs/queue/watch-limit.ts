/**
 * Watch streams one api process serves at once in queue mode unless VACCINE_MAX_WATCHES says
 * otherwise: each holds a Redis connection of its own (queue-executor.ts). Apart from the
 * executor so the configuration can name it without loading the Redis clients.
 */
export const DEFAULT_MAX_WATCHES = 500;

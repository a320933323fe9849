/**
 * Watch streams one api process serves at once in queue mode unless VACCINE_MAX_WATCHES says
 * otherwise: each is a key of the one blocking read of their events (event-streams.ts) and
 * holds at most one read's batch of events in memory. Apart from the executor so the configuration can name it
 * without loading the Redis clients.
 */
export const DEFAULT_MAX_WATCHES = 2000;

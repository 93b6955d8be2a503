"""The engine: the policy model and the Redis queues that hold executions and release them at
each policy's rate. Pure model plus Redis; it knows nothing of HubSpot, PostgreSQL or HTTP."""

"""Development tools around Throttle, never in its image: the HubSpot simulator, the local
stack of real processes, the demo and the fault suite."""

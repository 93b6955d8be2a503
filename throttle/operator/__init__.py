"""The Kubernetes operator: ThrottlePolicy resources reconciled into the engine."""

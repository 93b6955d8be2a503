"""The dispatcher: releases queued executions at each policy's rate and completes them."""

"""Text generation: sampling parameters, the step-loop engine, and the routes' payloads."""

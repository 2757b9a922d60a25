"""The scoring service's logic: request types, the scorer, the HTTP guard, and a dev server runner."""

//! Benchmarks (`examples/`, run by `bench/*/run`) and end-to-end tests (`tests/e2e`) of the API
//! and the worker fleet together; the worker itself does not depend on the API.

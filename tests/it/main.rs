//! The integration tests: one binary, modules by subject, one shared harness.

mod model_props;

//! Per-manifest reports (`<name>.report.json` and `.report.csv`, SPEC §5.5).

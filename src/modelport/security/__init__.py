"""Who may use the server: API keys, their scopes and models, the audit log.

`keys` is the key file (YAML, hashes only) and its atomic rewriting for `modelport keys`;
`policy` holds the checks (scopes, model patterns, per-key rate limits); `access` is what the
frontends hold: the current policy, reloaded when the key file changes, and the reporting of
refusals to `audit`. The core knows nothing of this package; frontends call it before the core.
"""

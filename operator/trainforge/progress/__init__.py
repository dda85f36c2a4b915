"""Live progress: workers push it to the operator (receiver.py), the operator keeps the newest
report per job (store.py) and the normal reconcile merges it into status under the rules in
policy.py (write rate, hang detection)."""

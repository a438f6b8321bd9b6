"""Nimbus-style IaaS clouds, one per site: an EC2 Query API with SigV4 checks and a
scheduler (`api`), a context broker (`broker`), an image repository, and a VMM agent
on each VMM node (`vmm`); all state in the site's Redis (`store`). These modules use the
standard library (and python3-redis) only: the cookbooks run them on nodes. `deploy` is the
frontend side (reserve, deploy, run the cookbooks, check)."""

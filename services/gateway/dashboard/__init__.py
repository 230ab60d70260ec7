"""The dashboard at /dashboard: static files, a live feed (server-sent events) and the request meter behind it."""

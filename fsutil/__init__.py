"""File-system helpers every layer shares: atomic writes and file hashes (`fsutil.atomic`), and the
marker files that say which folders this project made, the only ones it ever deletes (`fsutil.owned`).

The ground floor: it imports nothing of ours and nothing outside the standard library.
"""

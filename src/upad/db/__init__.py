"""The process database (models, sessions, migrations)."""
from upad.db.models import Base, Frame, FrameEvent, QuarantinedFile, Tile
from upad.db.session import Database, open_database

__all__ = ["Base", "Database", "Frame", "FrameEvent", "QuarantinedFile", "Tile", "open_database"]

"""The process database (models, sessions, migrations)."""
from upad.db.models import (Attempt, Base, CalibEpoch, CoaddRequest, Frame, FrameEvent, Job, Product, Provenance, ProvenanceInput,
                            QuarantinedFile, Run, Tile, TileFilter)
from upad.db.session import Database, open_database

__all__ = ["Attempt", "Base", "CalibEpoch", "CoaddRequest", "Database", "Frame", "FrameEvent", "Job", "Product", "Provenance",
           "ProvenanceInput", "QuarantinedFile", "Run", "Tile", "TileFilter", "open_database"]

"""Where exposures come from: the survey sources behind one interface."""

from astrid_assets.sources.base import CalibrationFrames, RawExposure, SurveySource
from astrid_assets.sources.local import LocalFitsSource
from astrid_assets.sources.simulated import SimulatedSurvey

__all__ = ["CalibrationFrames", "LocalFitsSource", "RawExposure", "SimulatedSurvey", "SurveySource"]

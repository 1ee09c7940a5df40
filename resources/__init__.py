"""The read-only files Fathom Desktop ships, installed as the package fathom_desktop.resources."""

"""One file per stage; alignfactory.registry maps spec names to these classes."""

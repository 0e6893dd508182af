#!/usr/bin/python3
"""A small RFC 6902 JSON Patch applier (with RFC 6901 JSON Pointers), written for the tests so
that the admission webhook's patches are checked by code that shares nothing with lib/inject.c.

    import jsonpatch
    doc2 = jsonpatch.apply(doc, patch)      # doc is not modified; raises PatchError
    jsonpatch.pointer(["metadata", "annotations", "prometheus.io/scrape"])
        -> "/metadata/annotations/prometheus.io~1scrape"
"""
import copy


class PatchError(Exception):
    pass


def unescape(token):
    if "~" in token.replace("~0", "").replace("~1", ""):
        raise PatchError("bad escape in %r" % token)
    return token.replace("~1", "/").replace("~0", "~")


def escape(token):
    return token.replace("~", "~0").replace("/", "~1")


def pointer(tokens):
    return "".join("/" + escape(t) for t in tokens)


def tokens(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError("pointer %r does not start with /" % path)
    return [unescape(t) for t in path[1:].split("/")]


def _index(token, size, allow_end):
    if allow_end and token == "-":
        return size
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise PatchError("bad array index %r" % token)
    i = int(token)
    if i > size or (i == size and not allow_end):
        raise PatchError("array index %d out of range (size %d)" % (i, size))
    return i


def _walk(doc, toks):
    cur = doc
    for t in toks:
        if isinstance(cur, dict):
            if t not in cur:
                raise PatchError("no member %r" % t)
            cur = cur[t]
        elif isinstance(cur, list):
            cur = cur[_index(t, len(cur), False)]
        else:
            raise PatchError("cannot descend into %r" % type(cur).__name__)
    return cur


def get(doc, path):
    return _walk(doc, tokens(path))


def _add(doc, path, value):
    toks = tokens(path)
    if not toks:
        return value
    parent = _walk(doc, toks[:-1])
    last = toks[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(last, len(parent), True), value)
    else:
        raise PatchError("cannot add into %r" % type(parent).__name__)
    return doc


def _remove(doc, path):
    toks = tokens(path)
    if not toks:
        raise PatchError("cannot remove the root")
    parent = _walk(doc, toks[:-1])
    last = toks[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError("no member %r to remove" % last)
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(last, len(parent), False))
    raise PatchError("cannot remove from %r" % type(parent).__name__)


def apply(doc, patch):
    """The patched copy of doc."""
    if not isinstance(patch, list):
        raise PatchError("a patch is a list of operations")
    doc = copy.deepcopy(doc)
    for n, op in enumerate(patch):
        try:
            kind, path = op["op"], op["path"]
            if kind == "add":
                doc = _add(doc, path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                _remove(doc, path)
            elif kind == "replace":
                get(doc, path)
                if tokens(path):
                    _remove(doc, path)
                doc = _add(doc, path, copy.deepcopy(op["value"]))
            elif kind == "move":
                value = _remove(doc, op["from"])
                doc = _add(doc, path, value)
            elif kind == "copy":
                doc = _add(doc, path, copy.deepcopy(get(doc, op["from"])))
            elif kind == "test":
                if get(doc, path) != op["value"]:
                    raise PatchError("test failed")
            else:
                raise PatchError("unknown op %r" % kind)
        except (KeyError, TypeError) as e:
            raise PatchError("operation %d: malformed (%s)" % (n, e))
        except PatchError as e:
            raise PatchError("operation %d (%s %s): %s" % (n, op.get("op"), op.get("path"), e))
    return doc

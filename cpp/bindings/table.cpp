// Bindings of embtab::CuckooTable as embtab._core._CuckooTable (wrapped by embtab.table).
//
// Every batch call checks its arguments and allocates its output with the GIL held, then runs
// with the GIL released. The GIL is never requested while the table's lock is held.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"
#include "embtab/io.hpp"
#include "embtab/table.hpp"

namespace py = pybind11;
using embtab::CuckooTable;
using embtab_py::as_ids;
using embtab_py::check_threads;

namespace {

py::array_t<std::int64_t> rows_array(std::size_t n) { return py::array_t<std::int64_t>(static_cast<py::ssize_t>(n)); }

py::dict stats_dict(const embtab::TableStats& s) {
    py::dict d;
    d["size"] = s.size;
    d["capacity"] = s.capacity;
    d["num_buckets"] = s.num_buckets;
    d["slots_per_bucket"] = embtab::kSlotsPerBucket;
    d["num_rows"] = s.num_rows;
    d["free_rows"] = s.free_rows;
    d["load_factor"] = s.load_factor;
    d["memory_bytes"] = s.memory_bytes;
    d["free_row_bytes"] = s.free_row_bytes;
    d["prepared_bytes"] = s.prepared_bytes;
    d["bytes_per_key"] = s.size ? static_cast<double>(s.memory_bytes) / static_cast<double>(s.size) : 0.0;
    d["lookups"] = s.lookups;
    d["second_bucket_probes"] = s.second_bucket_probes;
    d["inserts"] = s.inserts;
    d["erases"] = s.erases;
    d["displacements"] = s.displacements;
    d["bfs_searches"] = s.bfs_searches;
    d["max_bfs_path"] = s.max_bfs_path;
    d["grows"] = s.grows;
    d["grows_on_failed_insert"] = s.grows_on_failed_insert;
    d["load_factor_at_last_grow"] = s.load_factor_at_last_grow;
    d["rehashed_keys"] = s.rehashed_keys;
    return d;
}

py::dict config_dict(const embtab::TableConfig& c) {
    py::dict d;
    d["growth_factor"] = c.growth_factor;
    d["max_load_factor"] = c.max_load_factor;
    d["max_size"] = c.max_size == 0 ? py::object(py::none()) : py::object(py::int_(c.max_size));
    d["seed"] = c.seed;
    return d;
}

// lookup_rows: the rows of `ids` (-1 where absent) and how many are absent, the lookup run
// without the GIL.
std::pair<py::array_t<std::int64_t>, std::size_t> lookup_rows(const CuckooTable& t, const py::object& ids,
                                                              std::int64_t num_threads) {
    auto v = as_ids(ids, "ids");
    const int nt = check_threads(num_threads);
    auto out = rows_array(v.size);
    std::int64_t* o = out.mutable_data();
    std::size_t absent;
    {
        embtab_py::GilRelease release;
        absent = t.lookup(v.data, v.size, o, nt);
    }
    return {std::move(out), absent};
}

}  // namespace

void bind_table(py::module_& m) {
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const embtab::TableFullError& e) {
            py::object cls = py::module_::import("embtab._errors").attr("TableFullError");
            py::object exc = cls(e.what(), e.capacity, e.load_factor);
            PyErr_SetObject(cls.ptr(), exc.ptr());
        }
    });

    py::class_<CuckooTable, std::unique_ptr<CuckooTable>>(m, "_CuckooTable")
        .def(py::init([](std::uint64_t capacity, double growth_factor, double max_load_factor, std::uint64_t max_size,
                         std::uint64_t seed) {
                 embtab::TableConfig cfg;
                 cfg.growth_factor = growth_factor;
                 cfg.max_load_factor = max_load_factor;
                 cfg.max_size = max_size;
                 cfg.seed = seed;
                 return std::make_unique<CuckooTable>(capacity, cfg);
             }),
             py::arg("capacity"), py::arg("growth_factor"), py::arg("max_load_factor"), py::arg("max_size"),
             py::arg("seed"))
        .def("lookup",
             [](const CuckooTable& t, const py::object& ids, std::int64_t num_threads) {
                 return lookup_rows(t, ids, num_threads).first;
             },
             py::arg("ids"), py::arg("num_threads"))
        .def("lookup_counted",
             [](const CuckooTable& t, const py::object& ids, std::int64_t num_threads) {
                 auto [rows, absent] = lookup_rows(t, ids, num_threads);
                 return py::make_tuple(rows, absent);
             },
             py::arg("ids"), py::arg("num_threads"))
        .def("lookup_or_insert",
             [](CuckooTable& t, const py::object& ids, std::int64_t num_threads) {
                 auto v = as_ids(ids, "ids");
                 const int nt = check_threads(num_threads);
                 auto out = rows_array(v.size);
                 std::int64_t* o = out.mutable_data();
                 embtab_py::GilRelease release;
                 t.lookup_or_insert(v.data, v.size, o, nt);
                 return out;
             },
             py::arg("ids"), py::arg("num_threads"))
        .def("contains",
             [](const CuckooTable& t, const py::object& ids, std::int64_t num_threads) {
                 auto v = as_ids(ids, "ids");
                 const int nt = check_threads(num_threads);
                 py::array_t<bool> out(static_cast<py::ssize_t>(v.size));
                 auto* o = reinterpret_cast<std::uint8_t*>(out.mutable_data());
                 embtab_py::GilRelease release;
                 t.contains(v.data, v.size, o, nt);
                 return out;
             },
             py::arg("ids"), py::arg("num_threads"))
        .def("erase",
             [](CuckooTable& t, const py::object& ids) {
                 auto v = as_ids(ids, "ids");
                 embtab_py::GilRelease release;
                 return t.erase(v.data, v.size);
             },
             py::arg("ids"))
        .def("assign",
             [](CuckooTable& t, const py::object& keys, const py::object& rows_obj, std::uint64_t num_rows) {
                 auto k = as_ids(keys, "keys");
                 if (!py::isinstance<py::array>(rows_obj)) {
                     throw py::type_error("rows must be a numpy.ndarray of int64, got " +
                                          py::str(py::type::of(rows_obj).attr("__name__")).cast<std::string>());
                 }
                 embtab_py::refuse_masked(rows_obj, "rows");
                 const auto rows = py::reinterpret_borrow<py::array>(rows_obj);
                 if (!py::isinstance<py::array_t<std::int64_t>>(rows) || rows.dtype().kind() != 'i' ||
                     rows.dtype().itemsize() != 8) {
                     throw py::type_error("rows must be an int64 array, got dtype " + embtab_py::dtype_str(rows));
                 }
                 if (rows.ndim() != 1 || static_cast<std::size_t>(rows.shape(0)) != k.size) {
                     throw py::value_error("rows must be 1-D with as many entries as keys (" + std::to_string(k.size) +
                                           "), got shape " + embtab_py::shape_str(rows));
                 }
                 py::array r = embtab_py::aligned_input(py::array_t<std::int64_t, py::array::c_style>::ensure(rows));
                 // Copied with the GIL held: assign reads each key and row several times (checks,
                 // then placement), and a caller's array written by another thread in between
                 // could bring a key or row its checks never saw (two rows for one ID).
                 const auto* rp = static_cast<const std::int64_t*>(r.data());
                 std::vector<std::uint64_t> kc(k.data, k.data + k.size);
                 std::vector<std::int64_t> rc(rp, rp + k.size);
                 embtab_py::GilRelease release;
                 t.assign(kc.data(), rc.data(), k.size, num_rows);
             },
             py::arg("keys"), py::arg("rows"), py::arg("num_rows"))
        .def(
            "reserve",
            [](CuckooTable& t, std::uint64_t n) {
                embtab_py::GilRelease release;
                t.reserve(n);
            },
            py::arg("n"))
        .def("clear", [](CuckooTable& t) {
            embtab_py::GilRelease release;
            t.clear();
        })
        // The getters wait for the table's lock like every call: with the GIL released, so
        // that a thread polling len() during a long batch does not stop every Python thread.
        .def_property_readonly("size", [](const CuckooTable& t) {
            embtab_py::GilRelease release;
            return t.size();
        })
        .def_property_readonly("capacity", [](const CuckooTable& t) {
            embtab_py::GilRelease release;
            return t.capacity();
        })
        .def_property_readonly("num_rows", [](const CuckooTable& t) {
            embtab_py::GilRelease release;
            return t.num_rows();
        })
        .def_property_readonly("load_factor", [](const CuckooTable& t) {
            embtab_py::GilRelease release;
            return t.load_factor();
        })
        .def("stats", [](const CuckooTable& t) {
            embtab::TableStats s;
            {
                embtab_py::GilRelease release;
                s = t.stats();
            }
            return stats_dict(s);
        })
        .def("config", [](const CuckooTable& t) { return config_dict(t.config()); })
        .def("items",
             [](const CuckooTable& t) {
                 std::vector<std::uint64_t> keys;
                 std::vector<std::int64_t> rows;
                 {
                     embtab_py::GilRelease release;
                     t.items(keys, rows);
                 }
                 py::array_t<std::uint64_t> k(static_cast<py::ssize_t>(keys.size()));
                 py::array_t<std::int64_t> r(static_cast<py::ssize_t>(rows.size()));
                 std::copy(keys.begin(), keys.end(), k.mutable_data());
                 std::copy(rows.begin(), rows.end(), r.mutable_data());
                 return py::make_tuple(k, r);
             })
        .def("to_bytes",
             [](const CuckooTable& t) {
                 std::string s;
                 {
                     embtab_py::GilRelease release;
                     s = t.serialize();
                 }
                 return py::bytes(s);
             })
        .def_static("from_bytes",
                    [](const py::bytes& b) {
                        std::string_view sv(b);
                        embtab_py::GilRelease release;
                        return CuckooTable::deserialize(sv.data(), sv.size());
                    },
                    py::arg("data"))
        .def("save",
             [](const CuckooTable& t, const std::string& path) {
                 embtab_py::check_path(path, "path");
                 embtab_py::GilRelease release;
                 embtab::atomic_write_file(path, t.serialize());
             },
             py::arg("path"))
        .def_static("load",
                    [](const std::string& path) {
                        embtab_py::check_path(path, "path");
                        // the path as an error message shows it: UTF-8, a byte that is not
                        // escaped (a path need not be UTF-8)
                        const std::string shown = py::module_::import("os")
                                                      .attr("fsdecode")(py::bytes(path))
                                                      .attr("encode")("utf-8", "backslashreplace")
                                                      .cast<std::string>();
                        embtab_py::GilRelease release;
                        const std::string data = embtab::read_file(path);
                        try {
                            return CuckooTable::deserialize(data.data(), data.size());
                        } catch (const std::invalid_argument& e) {
                            throw std::invalid_argument(shown + ": " + e.what());
                        }
                    },
                    py::arg("path"));

    m.def(
        "lookup_many",
        [](const py::sequence& tables, const py::sequence& ids, std::int64_t num_threads, bool count_absent) {
            // Every argument is checked before any lookup; the lookups only read the tables.
            const std::size_t k = static_cast<std::size_t>(py::len(tables));
            if (static_cast<std::size_t>(py::len(ids)) != k) {
                throw py::value_error("tables and ids must have the same length, got " + std::to_string(k) +
                                      " and " + std::to_string(py::len(ids)));
            }
            std::vector<const CuckooTable*> ts;
            std::vector<embtab_py::IdView> vs;
            std::vector<std::int64_t*> os;
            py::list outs;
            for (std::size_t j = 0; j < k; ++j) {
                py::object t = tables[j];
                if (!py::isinstance<CuckooTable>(t)) {
                    throw py::type_error("tables[" + std::to_string(j) + "] must be a _CuckooTable, got " +
                                         py::str(py::type::of(t).attr("__name__")).cast<std::string>());
                }
                ts.push_back(t.cast<const CuckooTable*>());
                const std::string name = "ids[" + std::to_string(j) + "]";
                vs.push_back(as_ids(ids[j], name.c_str()));
                auto out = rows_array(vs.back().size);
                os.push_back(out.mutable_data());
                outs.append(out);
            }
            const int nt = check_threads(num_threads);
            std::vector<std::size_t> absent(k, 0);  // each table's absent IDs, counted while probing
            {
                embtab_py::GilRelease release;
                if (k >= static_cast<std::size_t>(embtab::resolve_threads(nt))) {
                    // At least one table per thread: tables side by side, each on one thread.
                    embtab::parallel_for(k, nt, 1, [&](std::size_t b, std::size_t e) {
                        for (std::size_t j = b; j < e; ++j) absent[j] = ts[j]->lookup(vs[j].data, vs[j].size, os[j], 1);
                    });
                } else {
                    for (std::size_t j = 0; j < k; ++j) absent[j] = ts[j]->lookup(vs[j].data, vs[j].size, os[j], nt);
                }
            }
            if (!count_absent) return outs;
            py::list pairs;
            for (std::size_t j = 0; j < k; ++j) pairs.append(py::make_tuple(outs[j], absent[j]));
            return pairs;
        },
        py::arg("tables"), py::arg("ids"), py::arg("num_threads") = 1, py::arg("count_absent") = false,
        "rows of ids[j] in tables[j] for every j (-1 where absent), in one call: the tables side "
        "by side on num_threads threads when there are at least as many tables as threads, "
        "else one after another on all of them; results identical for any num_threads. With "
        "count_absent, a list of (rows, number of -1 entries) pairs");
}
